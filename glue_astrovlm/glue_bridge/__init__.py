"""The bridge between glue's data model and the engine: subsets <-> regions <-> cutouts, and the
writes of results back into glue (subset labels, class subset groups, catalogue components, results
table). Shared by the glue-qt panel, glue-jupyter and the jdaviz plugin; imports no Qt.
"""
