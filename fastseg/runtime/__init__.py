"""What every stage needs to run work, below the pipeline stages and above nothing but the OS.

- `fastseg.runtime.workers`: worker processes over cases, under a memory budget (`run_jobs`,
  `parallel_map`), and how they start, report errors and end.
- `fastseg.runtime.locking`: one writer per folder (`folder_lock`), and which process owns a
  temporary file or staging folder (`owner_token`, `owner_alive`).
"""
