"""`make bench`: every benchmark appends JSON lines to build/bench/results.jsonl."""
