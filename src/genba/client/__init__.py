"""genba.client"""
