"""X.509 engine and key handling. Makes no outside I/O and writes no SQL."""
