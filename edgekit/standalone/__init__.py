"""What every bundle ships alone (numpy only): the device-side check and the input-drift monitor."""
