"""Report writers: the terminal table, the JSON report and JUnit XML. Pure: data in, text out."""
