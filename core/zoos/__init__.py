"""Zoos: tasks (data sets shipped with packages) and the zoo stage that trains populations on them."""
