"""mmpipe curate: quality filters and semantic dedup over a build, into a new build."""
