VALUE = "soak"
