"""Small shared helpers: progress bars, logging, devices, atomic writes."""
