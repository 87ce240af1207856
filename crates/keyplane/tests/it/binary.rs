//! The real binary: start, banner, signals, restart, files and logs, the CLI.
