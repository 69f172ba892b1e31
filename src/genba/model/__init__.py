"""genba.model"""
