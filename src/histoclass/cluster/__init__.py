"""Running beyond one process: batch inference on a Ray cluster (`ray_engine`, `ray_predict`).

Nothing here imports Ray at module level; `histoclass predict` without `--ray` never loads it.
"""
