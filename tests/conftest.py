import os

# Keep tests single-threaded per process and quiet.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
# The command's persistent compilation cache stays out of the user's home;
# tests that check it pass their own folder.
os.environ.setdefault("MISCAL_JAX_CACHE_DIR", "")
