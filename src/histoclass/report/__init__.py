"""What people read: `histoclass evaluate`'s files and figures, and report.html."""
