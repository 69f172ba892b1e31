"""genba.train"""
