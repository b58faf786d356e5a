"""fmb.viz"""
