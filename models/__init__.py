"""The shipped models: two versions of the recommender SavedModel. The repository keeps them at its top level;
the package carries them as `flows.models` (package data, mapped in pyproject.toml; see
`flows.core.shipped`)."""
