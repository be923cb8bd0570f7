"""Parquet: source (record batches from local or object-storage files, image bytes or confined image paths) and
sink (one hive-partitioned dataset per job: route=output|quarantine|dead_letter; atomic part files, resumable).
"""
