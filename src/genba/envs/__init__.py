"""genba.envs"""
