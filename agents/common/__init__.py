"""What both products share: the scripts' error contract (`cli`), typed setting values (`overrides`), the
weight checks on load (`weights`), sha256 digests of saved files (`digests`), the one-writer lock of a run
directory (`run_lock`) and the check of a device setting (`devices`)."""
