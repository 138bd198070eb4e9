"""Reading and writing: CT and label files, DICOM series, KiTS case folders, reports, previews.

``volume_io`` (read a scan or label map; what a case is), ``formats`` and
``dicom_checks`` (refusing broken files before they are read), ``cases``
(finding cases in folders and globs), ``validate`` (is it a usable CT),
``writers`` (label maps, .seg.nrrd, CSV), ``jsonfile`` (JSON), ``outputs`` and
``case_folder`` (a case's files, planned once and written together),
``preview`` (the PNG preview), ``atomic`` (every file and folder appears whole
or not at all, and nothing is replaced without ``overwrite``).
"""
