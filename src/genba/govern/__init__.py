"""genba.govern"""
