"""Jobs on a remote Ray cluster: packaging, the Jobs API client and the submit/jobs commands."""
