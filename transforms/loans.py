"""The tf.Transform preprocessing of the loan default model, shared by training and scoring.

Training analyzes :func:`preprocessing_fn` over the training rows on Beam
(``jobs/train.py``) and exports the resulting transform graph inside the model's
SavedModel; scoring runs that exported graph. There is no second implementation
of this preprocessing anywhere.

The training job is ``python -m jobs.train`` with no ``--contract`` (training.trainer.DEMO):
this module is one user of the generic job.

Inputs are dense 1-D tensors (shape ``[batch]``), one per raw feature of
``schemas/loans/schema.pbtxt``: int64 for INT, float32 for FLOAT, string for
BYTES (the raw feature spec training.dataset.feature_spec reads from the schema). The graph is total over its inputs' types:
out-of-range numbers are clipped to the schema's domain before scaling,
bucketization takes any number, and unseen strings land in out-of-vocabulary
buckets. Which rows are *acceptable* is the cleaning rules' business, not this
graph's.

The label (``defaulted``) and the key (``loan_id``) are passed through when they
are fed (training), so a transformed row keeps its label and its key; at serving
neither is fed and the transform layer drops them.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform import schema_inference

from batch.contract.contract import load_schema

SCHEMA_NAME = "loans"
LABEL = "defaulted"
KEY = "loan_id"

# Money: clipped to the schema domain, then log1p, then z-scored.
LOG_NUMERIC = ("annual_income", "loan_amount")
# Clipped to the schema domain, then z-scored.
NUMERIC = (
    "applicant_age",
    "loan_term_months",
    "interest_rate",
    "credit_score",
    "num_open_accounts",
    "num_delinquencies",
    "debt_to_income",
    "employment_years",
    "revolving_utilization",
    "months_since_last_delinq",
)
# Quantile buckets (int64 ids in [0, num_buckets)).
BUCKETIZED = {"applicant_age": 8, "credit_score": 10}
# Small categoricals: full vocabulary plus OOV buckets.
CATEGORICAL = ("home_ownership", "loan_purpose", "state", "channel")
CATEGORICAL_OOV_BUCKETS = 1
# High-cardinality categorical: the most frequent ids, the rest share OOV buckets.
EMPLOYER = "employer_id"
EMPLOYER_TOP_K = 2000
EMPLOYER_MIN_FREQUENCY = 5
EMPLOYER_OOV_BUCKETS = 16
# Free-text-like product code "FAMILY-TIER NN": family and tier vocabularies,
# the whole code hashed.
PRODUCT = "product_code"
PRODUCT_HASH_BUCKETS = 64
PRODUCT_OOV_BUCKETS = 2

# Transformed feature names (what the Keras model consumes; training.model_fn reads
# which are numbers and which are ids from tft_output's transformed schema).
Z_SUFFIX = "_z"
BUCKET_SUFFIX = "_bucket"
ID_SUFFIX = "_id"
LOAN_TO_INCOME_Z = "loan_to_income_z"
HAS_DELINQUENCY = "has_delinquency"
PRODUCT_FAMILY_ID = "product_family_id"
PRODUCT_TIER_ID = "product_tier_id"
PRODUCT_CODE_HASH = "product_code_hash"


def feature_domains() -> dict[str, tuple[float, float]]:
    """``(min, max)`` of every numeric feature that declares an int or float domain."""
    domains: dict[str, tuple[float, float]] = {}
    for feature in load_schema(SCHEMA_NAME).feature:
        if feature.HasField("int_domain"):
            domains[feature.name] = (float(feature.int_domain.min), float(feature.int_domain.max))
        elif feature.HasField("float_domain"):
            domains[feature.name] = (feature.float_domain.min, feature.float_domain.max)
    return domains


def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Raw 1-D feature tensors -> the transformed features the model consumes."""
    domains = feature_domains()
    outputs: dict[str, tf.Tensor] = {}

    def clipped(name: str) -> tf.Tensor:
        low, high = domains[name]
        value = tf.cast(inputs[name], tf.float32)
        return tf.clip_by_value(value, low, high)

    for name in LOG_NUMERIC:
        outputs[name + Z_SUFFIX] = tft.scale_to_z_score(tf.math.log1p(clipped(name)))
    for name in NUMERIC:
        outputs[name + Z_SUFFIX] = tft.scale_to_z_score(clipped(name))
    income = clipped("annual_income")
    loan = clipped("loan_amount")
    outputs[LOAN_TO_INCOME_Z] = tft.scale_to_z_score(tf.math.log1p(loan) - tf.math.log1p(income))
    outputs[HAS_DELINQUENCY] = tf.cast(inputs["num_delinquencies"] > 0, tf.float32)

    for name, buckets in BUCKETIZED.items():
        outputs[name + BUCKET_SUFFIX] = tft.bucketize(
            tf.cast(inputs[name], tf.float32), num_buckets=buckets, name=f"bucketize_{name}"
        )

    for name in CATEGORICAL:
        outputs[name + ID_SUFFIX] = tft.compute_and_apply_vocabulary(
            inputs[name], num_oov_buckets=CATEGORICAL_OOV_BUCKETS, vocab_filename=name
        )
    outputs[EMPLOYER + ID_SUFFIX] = tft.compute_and_apply_vocabulary(
        inputs[EMPLOYER],
        top_k=EMPLOYER_TOP_K,
        frequency_threshold=EMPLOYER_MIN_FREQUENCY,
        num_oov_buckets=EMPLOYER_OOV_BUCKETS,
        vocab_filename=EMPLOYER,
    )

    family, tier, code_hash = product_code_parts(inputs[PRODUCT])
    outputs[PRODUCT_FAMILY_ID] = tft.compute_and_apply_vocabulary(
        family, num_oov_buckets=PRODUCT_OOV_BUCKETS, vocab_filename="product_family"
    )
    outputs[PRODUCT_TIER_ID] = tft.compute_and_apply_vocabulary(
        tier, num_oov_buckets=PRODUCT_OOV_BUCKETS, vocab_filename="product_tier"
    )
    outputs[PRODUCT_CODE_HASH] = code_hash

    # Passed through for training (label) and for joining rows back (key).
    for name in (LABEL, KEY):
        if name in inputs:
            outputs[name] = tf.identity(inputs[name])
    return outputs


def product_code_parts(codes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Family, tier and hash bucket of each product code: "pl-gold 07" -> "PL", "GOLD", h.

    Codes are stripped and upper-cased; the family is what precedes the first
    dash or space, the tier what follows the first dash up to a space (empty
    without a dash); anything else still yields strings. The parsing (two
    regular expressions, about 0.3 us per row) runs once per *distinct* code of
    the batch and is gathered back to the rows: a batch holds a few hundred
    distinct codes, so this is ~5x cheaper per row, with the same values.
    """
    distinct, row_of = tf.unique(codes)
    code = tf.strings.upper(tf.strings.strip(distinct))
    family = tf.strings.regex_replace(code, r"^([^-\s]*).*$", r"\1")
    tier = tf.strings.regex_replace(code, r"^[^-]*-?([^\s]*).*$", r"\1")
    code_hash = tf.gather(tft.hash_strings(code, PRODUCT_HASH_BUCKETS), row_of)
    # Record the id range in the transformed schema, as vocabularies and buckets do, so
    # that a model reads the bucket count from tft_output (num_buckets_for_transformed_feature).
    # Only while tf.Transform traces: called eagerly (a test, a notebook) the override would
    # put eager tensors in the global graph's collection and break every later analysis.
    if not tf.executing_eagerly():
        schema_inference.set_tensor_schema_override(
            code_hash, tf.constant(0, tf.int64), tf.constant(PRODUCT_HASH_BUCKETS - 1, tf.int64)
        )
    return tf.gather(family, row_of), tf.gather(tier, row_of), code_hash
