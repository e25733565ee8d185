"""Ray Serve layer: the HTTP application over modelyard.inference, and how it is deployed."""
