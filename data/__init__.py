"""Image I/O, ingestion, the preprocessed cache, datasets, transforms, Datumaro I/O, demo data."""
