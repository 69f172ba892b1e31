"""genba.eval"""
