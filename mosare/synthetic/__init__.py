"""The synthetic demo cohort: RNA, reports and labels with a planted signal (:mod:`.cohort`) and rendered
slides (:mod:`.slide`)."""
