"""Training: tf.Transform analysis on Beam, a Keras model, one signed SavedModel registered
with its drift baseline. Beam and TensorFlow are allowed here (not in batch/); jobs/train.py
is its command line."""
