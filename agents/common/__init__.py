"""What both products share: the scripts' error contract (`cli`), typed setting values (`overrides`) and
the weight checks on load (`weights`)."""
