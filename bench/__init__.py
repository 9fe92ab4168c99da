"""numfed's benchmarks: each measures numfed beside a reference in the same run."""
