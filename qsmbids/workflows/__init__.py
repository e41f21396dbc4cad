"""qsmbids.workflows"""
