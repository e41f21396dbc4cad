"""qsmbids.interfaces"""
