"""The fixed column names batchscore adds to its outputs (predictions and dead-letter)."""

MODEL_NAME_COLUMN = "model_name"
MODEL_VERSION_COLUMN = "model_version"
RUN_ID_COLUMN = "run_id"
# Columns that hold one value for a whole run (written dictionary-encoded).
CONSTANT_COLUMNS = (MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN, RUN_ID_COLUMN)

# The dead-letter output: each rejected row with why.
REASON_COLUMN = "reject_reason"
MESSAGE_COLUMN = "reject_message"
