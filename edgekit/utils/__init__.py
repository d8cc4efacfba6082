"""Small utilities every stage may use: child processes, environment, quiet runtimes, progress, OUT."""
