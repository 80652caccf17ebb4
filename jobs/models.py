"""The model repository from the command line: list, show, register, sign, verify, promote,
baseline.

    python -m jobs.models list
    python -m jobs.models show loan_default@production
    python -m jobs.models register ./export/saved_model --name=churn --key=signing_key.pem
    python -m jobs.models sign churn@3 --key=signing_key.pem
    python -m jobs.models verify churn@3 --public_key=public_key.pem
    python -m jobs.models promote churn@3 --to production
    python -m jobs.models baseline churn@3 --input=TRAINING_DATA

Nothing but ``baseline`` (which scores a sample) imports TensorFlow: the other subcommands
answer in about a second.
Every change is atomic: a version appears whole and signed, a signature file
and ``aliases.json`` are replaced by rename.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from batch.api import write_summary_file
from batch.contract.contract import contract_dir
from batch.core.errors import ModelError, UsageError
from batch.demo import paths as demo_paths
from batch.engine.prepare import parse_key_columns, trust_policy
from batch.model.repository import (
    ModelRepository,
    find_saved_model,
    find_transform_output,
    resolve_model,
)
from batch.model.resolved import ResolvedModel
from batch.model.signing import (
    describe_signature,
    key_fingerprint,
    public_key_of,
    short,
    sign_model,
    verify_model,
)
from batch.observe.checks import OK, job_summary
from batch.observe.drift import Baseline, baseline_path
from jobs.cli import JobParser, add_summary_file, exit_process, run_main, setup_logging, text_table

PROG = "python -m jobs.models"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model_repo",
        default=str(demo_paths.demo_model_repo()),
        help="Model repository folder (default: %(default)s).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log at INFO level.")
    add_summary_file(parser)


def _key_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--key",
        type=Path,
        help=f"PEM EC private key (P-256/384/521) to sign {what} with. Default: "
        f"${demo_paths.SIGNING_KEY_ENV}, else the demo's key {demo_paths.demo_signing_key()} "
        "(created if missing). Make one with: openssl ecparam -name prime256v1 -genkey "
        "-noout -out signing_key.pem",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = JobParser(
        prog=PROG,
        description=(
            "Manage the model repository: <repo>/<name>/<version>/{saved_model/, "
            "saved_model.sig, transform_output/, metadata.json} and <repo>/<name>/aliases.json. "
            "Registered versions are signed (OpenSSF model-signing, EC key pair); "
            "`python -m jobs.score` verifies the signature on every worker before loading."
        ),
        epilog="Run `python -m jobs.models COMMAND --help` for each command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "list",
        help="names, versions, creation times, signatures and aliases",
        description="List every registered version: name, version, created, whether it "
        "is signed (and by which key), and the aliases that point at it.",
    )
    _common(p)

    p = commands.add_parser(
        "show",
        help="one version's metadata, signature, aliases and drift baseline as JSON",
        description="Print a version's metadata.json, plus its path, signature file and "
        "signing key, its aliases and its drift baseline (features, rows, sha256; null "
        "when it has none), as one JSON object.",
    )
    p.add_argument("model", help="NAME, NAME@VERSION, NAME@latest or NAME@ALIAS")
    _common(p)

    p = commands.add_parser(
        "register",
        help="copy a SavedModel in as the next version, signed",
        description="Copy SAVED_MODEL_DIR (and --transform_output) into the repository as "
        "the next version of --name, signed with --key before it becomes visible. The "
        "version appears whole and signed, or not at all. TFX layouts are taken as they "
        "come: a Trainer's model artifact (Format-Serving/), a Pusher's or an export's "
        "timestamped folders (the newest), a Transform component's transform_graph.",
    )
    p.add_argument(
        "saved_model_dir",
        type=Path,
        help="a SavedModel directory (saved_model.pb), or a TFX Trainer/Pusher output holding one",
    )
    p.add_argument("--name", required=True, help="registered model name, e.g. churn")
    p.add_argument(
        "--transform_output",
        type=Path,
        help="tf.Transform output folder (or TFX Transform's transform_graph) to keep beside it",
    )
    p.add_argument(
        "--key_columns",
        help="comma-separated input columns that identify a row (scoring's default "
        "--key_columns for this model)",
    )
    p.add_argument(
        "--contract",
        help="data contract (name under schemas/ or folder) scoring applies; its files are "
        "copied into the SavedModel (covered by the signature), so the version scores with "
        "it from any folder",
    )
    _key_option(p, "the registered SavedModel")
    _common(p)

    p = commands.add_parser(
        "sign",
        help="sign a registered version or a SavedModel directory",
        description="Sign a registered version (writes <version>/saved_model.sig) or a "
        "SavedModel directory DIR (writes DIR.sig beside it). The signature covers every "
        "file of the SavedModel directory.",
    )
    p.add_argument("model", help="NAME@VERSION (or NAME@ALIAS, NAME@latest) or a SavedModel path")
    _key_option(p, "it")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing signature (e.g. after an intended change of the files)",
    )
    _common(p)

    p = commands.add_parser(
        "verify",
        help="check a version's signature as scoring does",
        description="Verify the model's signature with --public_key exactly as scoring "
        "does before loading: refused if unsigned, if any file changed, was added or "
        "removed, or if another key signed it. Exit 0 if it verifies, 2 if not.",
    )
    p.add_argument("model", help="NAME@VERSION (or NAME@ALIAS, NAME@latest) or a SavedModel path")
    p.add_argument(
        "--public_key",
        help="PEM EC public key. Default: "
        f"${demo_paths.PUBLIC_KEY_ENV}, else the demo's key {demo_paths.demo_public_key()}",
    )
    _common(p)

    p = commands.add_parser(
        "promote",
        help="point an alias (production, canary, ...) at a version",
        description="Point ALIAS of NAME at VERSION, atomically, recording who, when, the "
        "previous version and whether it was forced in <repo>/<name>/aliases.json. "
        "`--model=NAME@ALIAS` then scores that version. A version must pass the promotion "
        "gates unless --force: it is signed, and, to become 'production', it carries a "
        "blessing against the version production points at now (written by a passing "
        "`python -m jobs.compare --baseline=NAME@production --candidate=NAME@VERSION`; "
        "not needed while production points at nothing, or for a version with the same "
        "bytes).",
    )
    p.add_argument("model", help="NAME@VERSION to promote")
    p.add_argument("--to", required=True, dest="alias", help="alias, e.g. production or canary")
    p.add_argument(
        "--force",
        action="store_true",
        help="promote even if a gate refuses (unsigned, not blessed); recorded in "
        "aliases.json as forced, with who, when and what was overridden",
    )
    p.add_argument("--reason", help="free text recorded with the promotion")
    _common(p)

    p = commands.add_parser(
        "baseline",
        help="compute a drift baseline from training data and attach it (re-signing)",
        description="Verify and load the version, read the first --rows rows of --input (the "
        "columns the model reads), score the valid ones, and write their statistics and the "
        "predictions' as the version's drift baseline inside its SavedModel "
        "(assets.extra/batchscore_baseline.json); the SavedModel is signed again with --key "
        "and its content hash changes (blessings of the old bytes no longer apply). For a "
        "model trained elsewhere; jobs.train attaches one itself.",
    )
    p.add_argument("model", help="NAME@VERSION (or NAME@ALIAS, NAME@latest)")
    p.add_argument(
        "--input", required=True, type=Path, help="the training data: Parquet file or folder"
    )
    p.add_argument(
        "--rows",
        type=int,
        default=200_000,
        help="rows read from the start of --input (default: %(default)s)",
    )
    p.add_argument(
        "--force", action="store_true", help="replace a baseline the version already has"
    )
    p.add_argument(
        "--public_key",
        help="PEM EC public key the version's current signature must verify with before it "
        f"is loaded. Default: ${demo_paths.PUBLIC_KEY_ENV}, else the demo's key",
    )
    _key_option(p, "the amended SavedModel")
    _common(p)
    return parser


# -- commands -------------------------------------------------------------------------


def cmd_list(repo: ModelRepository, args: argparse.Namespace) -> int:
    rows = []
    for name in repo.names():
        aliases = repo.aliases(name)
        for version in repo.versions(name):
            meta = repo.metadata(name, version)
            signature = describe_signature(repo.version_dir(name, version) / "saved_model")
            signed = (
                f"yes (key {short(signature['key_fingerprint'])})" if signature["signed"] else "no"
            )
            pointing = ",".join(a for a, v in aliases.items() if v == version)
            rows.append((name, str(version), str(meta.get("created", "")), signed, pointing))
    if not rows:
        print(f"no registered models in {repo.root}")
        return 0
    print(text_table(("NAME", "VERSION", "CREATED", "SIGNED", "ALIASES"), rows))
    return 0


def cmd_show(repo: ModelRepository, args: argparse.Namespace) -> int:
    model = _registered(repo, args.model)
    aliases = repo.aliases(model.name)
    shown = {
        **model.metadata,
        "repository": {
            "path": str(model.saved_model_dir.parent),
            "resolved_from": args.model,
            **describe_signature(model.saved_model_dir),
            "aliases": sorted(a for a, v in aliases.items() if str(v) == model.version),
            "drift_baseline": _baseline_summary(model),
        },
    }
    print(json.dumps(shown, indent=2, sort_keys=True, default=str))
    return 0


def _baseline_summary(model: ResolvedModel) -> dict[str, Any] | None:
    """What ``jobs.score --drift`` compares this model's runs with; None without one."""
    baseline = Baseline.load(model.saved_model_dir, model.label)
    if baseline is None:
        return None
    return {
        "path": str(baseline_path(model.saved_model_dir)),
        "sha256": baseline.sha256,
        "source": baseline.source,
        "rows": baseline.rows,
        "features": [f.name for f in baseline.features],
        "prediction_bins": baseline.prediction.bins if baseline.prediction else None,
    }


def cmd_register(repo: ModelRepository, args: argparse.Namespace) -> int:
    source = find_saved_model(args.saved_model_dir)
    transform_output = (
        find_transform_output(args.transform_output) if args.transform_output else None
    )
    contract = contract_dir(args.contract) if args.contract else None
    key = demo_paths.ensure_signing_key(args.key)
    fingerprint = key_fingerprint(public_key_of(key))
    metadata: dict[str, Any] = {"source": str(source.resolve())}
    if transform_output is not None:
        metadata["transform_source"] = str(transform_output.resolve())
    if args.key_columns:
        metadata["key_columns"] = parse_key_columns(args.key_columns)
    if contract is not None:
        metadata["contract"] = contract.name
    model = repo.register(
        args.name, source, metadata, transform_output, signing_key=key, contract_dir=contract
    )
    print(
        f"registered {model.label} at {model.saved_model_dir.parent}, signed with {key} "
        f"(key {short(fingerprint)})"
    )
    return 0


def cmd_sign(repo: ModelRepository, args: argparse.Namespace) -> int:
    model = resolve_model(args.model, repo)
    sig = model.signature_file
    if sig.is_file() and not args.force:
        raise UsageError(
            f"model {model.label} is already signed ({sig}); pass --force to replace that "
            "signature (e.g. after an intended change of its files)"
        )
    key = demo_paths.ensure_signing_key(args.key)
    fingerprint = key_fingerprint(public_key_of(key))
    sign_model(model.saved_model_dir, key)
    print(f"signed {model.label} ({model.saved_model_dir}) with key {short(fingerprint)}: {sig}")
    return 0


def cmd_verify(repo: ModelRepository, args: argparse.Namespace) -> int:
    model = resolve_model(args.model, repo)
    result = verify_model(model, trust_policy(args.public_key, allow_unsigned=False))
    print(
        f"model {model.label} ({model.saved_model_dir}): signature OK, signed by key "
        f"{short(result.key_fingerprint)} ({result.signature_file})"
    )
    return 0


def cmd_promote(repo: ModelRepository, args: argparse.Namespace) -> int:
    promotion = repo.promote(args.model, args.alias, force=args.force, reason=args.reason)
    was = (
        f" (was version {promotion.previous_version})"
        if promotion.previous_version is not None
        else ""
    )
    forced = f"; FORCED over: {'; '.join(promotion.overridden)}" if promotion.overridden else ""
    print(
        f"promoted {promotion.name}@{promotion.version} to '{promotion.alias}'{was} by "
        f"{promotion.promoted_by} at {promotion.promoted_at}{forced}"
    )
    return 0


def cmd_baseline(repo: ModelRepository, args: argparse.Namespace) -> int:
    from batch.ops.baseline import BaselineRequest, attach_baseline

    key = demo_paths.ensure_signing_key(args.key)
    public_key_of(key)  # a bad key fails before anything is read
    request = BaselineRequest(
        model=args.model,
        input=args.input,
        signing_key=key,
        trust=trust_policy(args.public_key, allow_unsigned=False),
        rows=args.rows,
        force=args.force,
    )
    attach_baseline(repo, request, report=print)
    return 0


def _registered(repo: ModelRepository, spec: str) -> ResolvedModel:
    model = resolve_model(spec, repo)
    if not model.registered:
        raise ModelError(
            f"model '{spec}' is a SavedModel directory, not a registered version; register "
            f"it first: `{PROG} register {spec} --name=NAME`"
        )
    return model


COMMANDS: dict[str, Callable[[ModelRepository, argparse.Namespace], int]] = {
    "list": cmd_list,
    "show": cmd_show,
    "register": cmd_register,
    "sign": cmd_sign,
    "verify": cmd_verify,
    "promote": cmd_promote,
    "baseline": cmd_baseline,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    repo = ModelRepository(args.model_repo)
    job = f"models {args.command}"

    def run() -> int:
        code = COMMANDS[args.command](repo, args)
        if args.summary_file:
            done = job_summary(job, OK, model=getattr(args, "model", None), repo=str(repo.root))
            write_summary_file(args.summary_file, done, f"{PROG} {args.command}")
        return code

    return run_main(run, f"{PROG} {args.command}", job=job, summary_file=args.summary_file)


if __name__ == "__main__":
    exit_process(main())
