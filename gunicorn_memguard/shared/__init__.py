"""Memory shared between the master and its workers across fork: no files, locks or threads."""
