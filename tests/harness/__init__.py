"""Helpers for Oxbow's end-to-end tests: processes, servers, Kafka wire bytes, clients.

Everything here starts real processes on 127.0.0.1 ports chosen at run time and
stops them by PID; nothing is left behind, also when a test fails or pytest is
interrupted (see `procs.ManagedProcess` and its atexit sweep).
"""
