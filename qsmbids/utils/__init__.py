"""qsmbids.utils"""
