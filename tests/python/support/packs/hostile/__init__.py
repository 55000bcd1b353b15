VALUE = "hostile"
