"""Per-case work spread over a Ray cluster: `fastseg preprocess|predict|evaluate --ray [ADDRESS]`.

Ray is optional (`pip install "fastseg[ray]"`); nothing here is imported unless `--ray` is given,
and nothing here imports Ray at module level.

- `fastseg.distributed.cluster`: joining or starting a cluster (`connect`), the clear error when Ray
  is missing (`require_ray`), and how many workers fit on each node (`worker_slots`).
- `fastseg.distributed.scheduler`: `run_cases`, the driver's loop: one long-lived actor per worker
  slot, cases handed out largest first, a failed case retried on another worker, a lost worker's
  cases rescheduled on a new one, one progress bar, per-worker throughput.
- `fastseg.distributed.predict`, `.preprocess`, `.evaluate`: what each command runs per case --
  fastseg's own per-case code (`Predictor.predict_cases`, `fastseg.preprocess.worker`,
  `fastseg.evaluate.folder.score_case`) on the cases a worker is given. Paths travel, not arrays:
  the input and output folders must be on a filesystem every node sees at the same path.
"""
