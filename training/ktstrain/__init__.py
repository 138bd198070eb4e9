"""Headless training of the KidneyTumorSeg cascade (builds on KidneyTumorSegLib, reimplements nothing)."""
