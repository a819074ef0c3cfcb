"""The shipped models: two versions of the recommender SavedModel (package data, `flows.settings`)."""
