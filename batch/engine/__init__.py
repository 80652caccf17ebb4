"""The scoring engine: plan the input, validate rows, feed the model, overlap reading, scoring and writing, the run template."""
