"""fmb.data"""
