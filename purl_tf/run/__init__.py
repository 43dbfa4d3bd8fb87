"""One run end to end: a method chooses an allocation, it is fine-tuned, compared, exported
and recorded."""
