"""Model-ready preprocessing stages shared by feature extraction, training and bulk inference."""
