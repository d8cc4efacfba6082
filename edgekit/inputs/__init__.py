"""What a build is given, loaded and checked: the model, the data, and the Plan that holds them."""
