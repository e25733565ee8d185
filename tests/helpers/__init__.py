"""What tests share besides fixtures: real data, small configs, ports, registered models, fuzzing, imports."""
