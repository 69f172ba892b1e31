"""genba.serve"""
