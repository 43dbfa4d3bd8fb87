"""What every layer of a run shares: its folder and files, its stop signals, its tf.distribute
strategy, its results record and its figures. Imports nothing else of purl_tf."""
