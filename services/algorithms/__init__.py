"""Algorithm families (one folder each) behind the small interface the services use."""
