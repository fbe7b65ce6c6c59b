"""What happens to an accepted message: routing its recipients and the delivery transaction."""
